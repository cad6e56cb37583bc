"""Model analysis: attention maps, attention rollout and Integrated-Gradients token attributions."""
