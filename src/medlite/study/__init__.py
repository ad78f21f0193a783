"""Studies: a grid / list of settings x seeds x folds, each trial an ordinary run directory, with a
shared stage store, pluggable executors (local pool, Ray), statistics and paper-ready tables."""
