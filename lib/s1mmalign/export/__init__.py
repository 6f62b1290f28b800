"""Export: curated training shards from one consistent snapshot of the lake."""
