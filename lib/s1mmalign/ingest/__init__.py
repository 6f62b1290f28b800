"""Ingest: source trees (JSONL records, image archives) into the lake's tables."""
