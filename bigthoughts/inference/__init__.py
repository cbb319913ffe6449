"""Inference engines behind the vote, the calculator, stop strings and evaluation.

``engine.make_engine`` picks one: the JAX sampler (``bigthoughts.inference.jax_sampler.Sampler``;
training rollouts, TPU/GPU) or llama.cpp (``inference.llamacpp``; CPU inference,
optional extra ``pip install 'bigthoughts[llamacpp]'``).
"""
