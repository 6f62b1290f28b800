#!/usr/bin/env bash
# Sets up everything on a fresh machine; safe to re-run (each step skips what is already done).
#   .venv/            Python 3.11 virtual environment with the pinned packages (+ test extras)
#   jars/             Delta Lake jars from Maven Central, resolved once (pom.xml)
#   dist/s1mmalign.zip  lib/ + conf/ + schemas/ for spark-submit --py-files on a cluster
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.s1mmalign-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[test]"
  touch "$stamp"
fi

if [ ! -f jars/.resolved ] || [ pom.xml -nt jars/.resolved ]; then
  rm -rf jars && mkdir -p jars
  mvn -q -B dependency:copy-dependencies -DoutputDirectory=jars -DexcludeTransitive=true -DincludeScope=runtime
  touch jars/.resolved
fi

# spark-submit, spark-sql and spark-class from this venv find the Delta jars without flags.
SPARK_HOME=$(.venv/bin/python -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')
mkdir -p "$SPARK_HOME/conf"
{
  echo "# written by s1mmalign-lake build.sh"
  echo "spark.jars $(ls -1 "$PWD"/jars/*.jar | paste -sd, -)"
  echo "spark.sql.extensions io.delta.sql.DeltaSparkSessionExtension"
  echo "spark.sql.catalog.spark_catalog org.apache.spark.sql.delta.catalog.DeltaCatalog"
} > "$SPARK_HOME/conf/spark-defaults.conf"

rm -rf dist/pkg && mkdir -p dist/pkg/s1mmalign/_data
cp -r lib/s1mmalign/*.py dist/pkg/s1mmalign/
cp -r conf schemas dist/pkg/s1mmalign/_data/
(cd dist/pkg && rm -f ../s1mmalign.zip && "$OLDPWD/.venv/bin/python" -m zipfile -c ../s1mmalign.zip s1mmalign)
rm -rf dist/pkg
echo "build.sh: ready (.venv, $(ls jars/*.jar | wc -l) jars, dist/s1mmalign.zip)"
