"""The embedded demo: a template corpus, its evaluation tasks and its RTP-style prompt file."""
