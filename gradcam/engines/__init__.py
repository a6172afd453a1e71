"""Engines that run a ``gradcam explain`` job (``gradcam.batch.job.ExplainJob``) over many images.

Each engine takes the job, the inputs still to do (an iterator of ``InputItem``) and an ``emit`` callback
that writes one ``BatchOutput`` (records, PNG bytes, heat maps); the caller owns the output folder, so
resuming and writing work the same whatever the engine.

``local``
    This process: a reader thread decodes batches ahead of the model (``gradcam.batch.reader``).
``ray``
    A Ray Data pipeline: decoding tasks feed a pool of explainer actors, each loading the model once,
    on a local Ray instance or a cluster (``pip install gradcam[ray]``).

Neither is imported by ``import gradcam``; Ray is imported only when the ray engine runs.
"""
