"""Compute the text signals of every pair that has none yet (or whose text changed): no model.

    spark-submit jobs/score_text.py --lake LAKE_ROOT_OR_S3_URI [--conf conf/X.yaml]

Words, sentences, LaTeX/math and digit shares, units, the figure label, truncation, caption = recaption,
a recaption that only repeats the caption, the caption's boilerplate key and the language (py3langid),
into the text_signals table (lib/s1mmalign/score/text.py says how each is measured).
"""

import _bootstrap  # noqa: F401
from s1mmalign import cli
from s1mmalign.score import pipeline


def summary(ctx, result) -> None:
    print(f"score_text: {result.computed} pairs computed, {result.pairs} pairs with signals ({result.seconds:.1f}s)")


if __name__ == "__main__":
    cli.job(cli.Job("score_text", __doc__, lambda ctx: pipeline.run_text(ctx.spark, ctx.cfg, ctx.lake),
                    needs=pipeline.TEXT_NEEDED, summary=summary))
