"""Learning-to-rank with LightGBM and active selection of queries for annotators."""
