"""featharm's numerical core: arrays in, arrays out; no pandas, no estimators, no files.

Each piece of the maths is written once here and used by the model families above it:

* :mod:`.eb`: ComBat's steps S2–S8 (standardized moments, the empirical-Bayes priors and posteriors, one
  driver over batches, the adjustment), ``docs/methods.md`` §1.2;
* :mod:`.ols`: the least-squares solver of a design and the within-batch residual sums of squares (S1);
* :mod:`.missing`: S1–S7 with missing values (NaN cells), each feature on its observed rows (§1.8);
* :mod:`.suffstats`: per-batch sufficient statistics (mergeable, shifted) and S1 from them (§1.9);
* :mod:`.splines`: B-spline bases frozen at fit and their roughness penalties;
* :mod:`.penalized`: penalized regression with a smoothing parameter per feature (REML/GCV), §2;
* :mod:`.location_scale`: the Gaussian location–scale fit of ComBatLS, §5.1;
* :mod:`.blocks`: blocks of bounded memory that follow a table's layout (features of a column-major table,
  rows of a row-major one), and per-feature ranges, sums and variances computed through them;
* :mod:`.parallel`: those blocks dealt between threads on a large table.

Everything works on arrays laid out samples × features (float64, or float32 read in float64 blocks; row- or
column-major, never copied to the other layout), vectorized across features, so an out-of-core or
distributed engine can call the same functions on a block of features.
"""
