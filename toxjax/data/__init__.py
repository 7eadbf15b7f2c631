"""Data: conditioning formats, SeqIO tasks over scored data, vocabulary, the step-indexed input."""
