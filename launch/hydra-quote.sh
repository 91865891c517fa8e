# hydra_quote VALUE: VALUE as one quoted Hydra override value, so that a path with spaces,
# commas, quotes, '=' or parentheses reaches the config unchanged (unquoted, a comma makes a
# list and a quote or '=' a syntax error). Hydra unescapes \' and backslashes before a quote
# or at the end of the value.
hydra_quote() {
  local v
  v=$(printf '%s' "$1" | sed -E "s/(\\\\+)('|\$)/\\1\\1\\2/g; s/'/\\\\'/g")
  printf "'%s'" "$v"
}
