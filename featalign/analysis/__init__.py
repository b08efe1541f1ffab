"""Analysis of the shared feature space: attribution (with Latent Scaling), base-vs-base controls,
drift over checkpoints, RL-success features, and static HTML feature cards."""
