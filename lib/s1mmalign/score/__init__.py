"""Score: CLIP image/caption alignment as batch inference inside Spark."""
