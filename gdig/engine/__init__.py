"""The maths on captured activations and gradients: hooks, curvature and its fit, influence, sketches, the
gradient index's projections, memory rules, processes (torch.distributed)."""
