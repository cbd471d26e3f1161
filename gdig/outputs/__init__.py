"""What leaves a run: exports and comparisons of selections."""
