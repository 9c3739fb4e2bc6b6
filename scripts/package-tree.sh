# Sourced by scripts/typecheck and scripts/lint-imports: builds build/package/, a tree of
# symlinks with the installed shape (semcached/service, …), since the repository keeps
# each subpackage in a top-level folder (docs/architecture.md), and sets $tree to it.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tree="$root/build/package"
rm -rf "$tree"
mkdir -p "$tree/semcached"
for f in "$root"/common/*; do ln -s "$f" "$tree/semcached/"; done
for d in protocol service index cachepolicy ext clients integrations; do ln -s "$root/$d" "$tree/semcached/$d"; done
