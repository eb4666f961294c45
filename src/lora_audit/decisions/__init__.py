"""Pure decisions from computed numbers: retrain advice, compress ranks, check rules."""
