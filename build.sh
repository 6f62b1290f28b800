#!/usr/bin/env bash
# Sets up everything on a fresh machine; safe to re-run (each step skips what is already done).
#   ./build.sh          set up only
#   ./build.sh sample   set up, then ingest and validate the embedded sample corpus (spark-submit)
#   ./build.sh test     set up (with the CLIP stack), then run the whole test suite (what .ci/run does)
#   ./build.sh clip     set up with the CLIP stack (torch, open_clip) for jobs/score_clip.py
#   ./build.sh airflow  set up, and Airflow 3.3.2 in .venv-airflow (dags/s1mmalign_refresh.py)
#   .venv/            Python 3.11 virtual environment with the pinned packages (+ test extras)
#   vendor/data_docs/ Data Docs' scripts and styles from the npm registry (conf/data_docs_assets.yaml)
#   jars/             Delta Lake jars from Maven Central, resolved once (pom.xml)
#   dist/s1mmalign.zip  lib/ + conf/ + schemas/ + expectations/ for spark-submit --py-files on a cluster
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# The tests also need the CLIP stack (torch, open_clip: several GB, as PyPI's torch is a CUDA build).
extras=test
if [ "${1:-}" = test ] || [ "${1:-}" = clip ]; then extras=test,clip,bench; fi
stamp=".venv/.s1mmalign-installed-${extras//,/-}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  # Measured on a fresh clone: with the CLIP stack pip peaks at 10 GB (7 GB kept, 5.3 of it torch, triton and
  # NVIDIA's libraries); without it the venv keeps 1.6 GB.
  need_gb=3; [ "$extras" = test ] || need_gb=11
  for dir in . "${TMPDIR:-/tmp}"; do
    free_gb=$(df -Pk "$dir" | awk 'NR == 2 { print int($4 / 1048576) }')
    if [ "$free_gb" -lt "$need_gb" ]; then
      echo "build.sh: installing .venv needs about $need_gb GB free; $(cd "$dir" && pwd) has $free_gb GB" >&2
      exit 1
    fi
  done
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[$extras]"
  touch "$stamp"
fi

# Great Expectations' Data Docs load their scripts, styles and fonts from public CDNs; these copies (pinned
# and checked in conf/data_docs_assets.yaml, 3.4 MB from the npm registry) let validate serve them from the
# docs folder instead, so the pages work with no network and tell no one who opened them.
if [ ! -f vendor/data_docs/.fetched ] || [ conf/data_docs_assets.yaml -nt vendor/data_docs/.fetched ]; then
  .venv/bin/python -m s1mmalign.validate.docs_offline --fetch vendor/data_docs
  touch vendor/data_docs/.fetched
fi

# Airflow (dags/) lives in its own venv, pinned by airflow-requirements.lock: its Spark provider pulls
# pyspark-client, whose files would overwrite .venv's pyspark. The test command needs it for the DAG tests.
if [ "${1:-}" = test ] || [ "${1:-}" = airflow ]; then
  if [ ! -x .venv-airflow/bin/airflow ] || [ airflow-requirements.lock -nt .venv-airflow/.installed ]; then
    "$PY" -m venv .venv-airflow
    .venv-airflow/bin/python -m pip install -q --upgrade pip
    .venv-airflow/bin/python -m pip install -q -r airflow-requirements.lock
    touch .venv-airflow/.installed
  fi
fi

# The report test opens the page in Debian's headless Chromium (needs root for apt-get, as on CI).
if [ "${1:-}" = test ] && ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    echo "build.sh: chromium is missing and this is not root: the browser test will skip" >&2
  fi
fi

SPARK_HOME=$(.venv/bin/python -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')
if [ ! -f jars/.resolved ] || [ pom.xml -nt jars/.resolved ]; then
  rm -rf jars && mkdir -p jars
  mvn -q -B dependency:copy-dependencies -DoutputDirectory=jars -DincludeScope=runtime
  # Drop what pyspark ships already (same artifact, any version: its own wins on the classpath anyway).
  # commons-logging's classes come with pyspark's jcl-over-slf4j.
  shipped=$(ls "$SPARK_HOME/jars" | sed -E 's/-[0-9][^-]*(-[A-Za-z][^-]*)?\.jar$//' | sort -u)
  for jar in jars/*.jar; do
    name=$(basename "$jar" | sed -E 's/-[0-9][^-]*(-[A-Za-z][^-]*)?\.jar$//')
    if [ "$name" = commons-logging ] || grep -qxF "$name" <<<"$shipped"; then rm "$jar"; fi
  done
  touch jars/.resolved
fi

# spark-submit, spark-sql and spark-class from this venv find the lake's jars without flags.
mkdir -p "$SPARK_HOME/conf"
{
  echo "# written by s1mmalign-lake build.sh"
  echo "spark.jars $(ls -1 "$PWD"/jars/*.jar | paste -sd, -)"
  echo "spark.sql.extensions io.delta.sql.DeltaSparkSessionExtension"
  echo "spark.sql.catalog.spark_catalog org.apache.spark.sql.delta.catalog.DeltaCatalog"
} > "$SPARK_HOME/conf/spark-defaults.conf"

rm -rf dist/pkg && mkdir -p dist/pkg/s1mmalign/_data
(cd lib && find s1mmalign -name '*.py' -not -path '*/__pycache__/*' -exec cp --parents {} ../dist/pkg/ \;)
cp -r conf schemas expectations sql dist/pkg/s1mmalign/_data/
pwd > dist/pkg/s1mmalign/_data/checkout     # where jobs submitted from this machine find jars/ and vendor/
(cd dist/pkg && rm -f ../s1mmalign.zip && "$OLDPWD/.venv/bin/python" -m zipfile -c ../s1mmalign.zip s1mmalign)
rm -rf dist/pkg
echo "build.sh: ready (.venv, $(ls jars/*.jar | wc -l) jars, dist/s1mmalign.zip)"

export PATH="$PWD/.venv/bin:$PATH"
case "${1:-}" in
  "" | clip | airflow) ;;
  sample)
    # Ingest, then validate. The embedded sample: 1,000 pairs over arXiv (yearly archives, one split into parts), a bioRxiv-like
    # unpacked tree and a ChemRxiv-like archive, with every kind of bad input; generated on first use.
    if [ ! -f work/sample/_manifest.jsonl ]; then
      rm -rf work/sample
      python -m s1mmalign.ingest.sample --out work/sample --pairs 1000 --faults
    fi
    spark-submit jobs/ingest.py --source work/sample --lake work/lake --conf conf/local.yaml
    python -m s1mmalign.report.sqlshell --lake work/lake -S -e "
      SELECT discipline, count(*) AS pairs FROM s1mmalign.pairs GROUP BY discipline ORDER BY discipline;
      SELECT reason, count(*) AS lines FROM s1mmalign.quarantine GROUP BY reason ORDER BY reason;" 2>/dev/null
    # Validate the lake: exit 1 means a critical expectation failed (the sample's planted faults
    # quarantine about a fifth of its lines, over the 10% threshold); that is a verdict, not a failure here.
    set +e
    spark-submit jobs/validate.py --lake work/lake --conf conf/local.yaml
    vrc=$?
    set -e
    if [ "$vrc" -ne 0 ] && [ "$vrc" -ne 1 ]; then exit "$vrc"; fi
    python -m s1mmalign.report.sqlshell --lake work/lake -S -e "
      SELECT suite, expectation, severity, observed_value FROM s1mmalign.quality_results
      WHERE NOT success AND validate_run_id = (SELECT max(validate_run_id) FROM s1mmalign.quality_results);" 2>/dev/null
    # The caption-quality report (no CLIP scores on the sample unless score_clip ran: the page says so).
    spark-submit jobs/report.py --lake work/lake --out work/report --conf conf/local.yaml
    python -m s1mmalign.report.sqlshell --lake work/lake -S -e "
      SELECT field, present, round(empty_or_short_share, 4), round(label_share, 4), chars_p50, words_p50
      FROM s1mmalign.caption_lengths WHERE discipline = '*' AND source = '*' ORDER BY field;" 2>/dev/null
    echo "build.sh: lake at work/lake (query it: python -m s1mmalign.report.sqlshell --lake work/lake);" \
         "Data Docs at work/lake/_quality/data_docs/index.html; report at work/report/report.html"
    ;;
  test)
    shift
    set +e
    # Two worker processes, whole files each (a file's module fixtures: one moto server, one lake, built
    # once): most of a test's time is JVM start-up, Delta commits and waits, so two share 2 cores well.
    # S1MMALIGN_TEST_WORKERS=0 (or -n 0 among the arguments) runs in this process, as plain pytest does.
    python -m pytest -ra -n "${S1MMALIGN_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@"
    rc=$?
    set -e
    if [ "$rc" -eq 5 ]; then
      echo "build.sh: pytest collected no tests: failing on purpose" >&2
      exit 1
    fi
    exit "$rc"
    ;;
  *)
    echo "build.sh: unknown command '$1' (use: sample, test, clip, airflow, or nothing)" >&2
    exit 2
    ;;
esac
