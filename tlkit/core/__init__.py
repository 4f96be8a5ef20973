"""The core every job and stage builds on: `kinds` (the stage registry and recipe resolution,
without TensorFlow, so that a recipe is checked at once) and `run` (the run context, the head,
`configure`, the one place that compiles and fits, and `run_recipe`)."""
