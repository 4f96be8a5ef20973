"""The engine every stage runs on: the run context and the one compile-and-fit, distribution, the classifier's head, resume, the frozen pass, callbacks."""
