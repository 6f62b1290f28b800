"""The lake: one Lake per job: its root, S3 settings, lease, Delta tables and the files beside them."""
