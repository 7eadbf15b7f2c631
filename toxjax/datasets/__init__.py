"""The packaged data: the real-text corpus, prompts and detection sets (real_corpus) and the
generated synthetic template corpus (template_corpus)."""
