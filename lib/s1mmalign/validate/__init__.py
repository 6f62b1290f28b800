"""Validate: Great Expectations suites over the lake's tables, duplicates, Data Docs."""
