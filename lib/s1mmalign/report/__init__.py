"""Report: SQL views on caption quality, the HTML page and its plots, the spark-sql shell."""
