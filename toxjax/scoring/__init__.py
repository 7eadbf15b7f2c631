"""Scoring: read a corpus, score every document for toxicity, write resumable shards."""
