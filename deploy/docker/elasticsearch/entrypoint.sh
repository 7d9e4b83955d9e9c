#!/bin/bash
# Runs Elasticsearch in the foreground with every environment variable whose name contains a
# dot passed as a setting (-E name=value), as the public image's entry point does.
set -euo pipefail
settings=()
while IFS='=' read -r name value; do
  [[ "$name" == *.* ]] && settings+=("-E" "$name=$value")
done < <(env)
exec /usr/share/elasticsearch/bin/elasticsearch "${settings[@]}" "$@"
