"""What a training run is made of besides the method: its plan, batches, optimiser and schedule,
resumable state, stop signals, processes (``torchrun``, worker pools) and teacher precompute.

The loop itself is :func:`dho.loop.train`; these modules never import it.
"""
