"""Curvature of the training objective: batched Lanczos (Hessian), the NTK, and the helper
(:class:`~dlf.curvature.helper.Curvature`) through which analyzers share their solves."""
