"""The batch job behind ``gradcam explain``: everything an engine needs to explain many images, and nothing
about which engine runs it or how the command line spells it.

``errors``
    ``JobError``, the one error type of a job: a problem the user can fix, printed as one line.
``loading``
    A model from its name (``default``, ``torchvision:NAME``, a factory ...), with its preprocessing.
``layout``
    ``OutputLayout``: every name the job writes (records, summary, pictures, shards) and the input stems.
``sources``
    The inputs (files, folders, glob patterns, manifests), listed lazily; those a resumed run still has to do.
``reader``
    Decoding batches of images, ahead of the model in a background thread.
``job``
    ``ExplainJob`` (what to do, picklable for workers) and ``Explainer`` (a decoded batch in, its output out).
``records``
    Writing a batch's output: pictures and shards first, then the records that name them; the summary.
``settings``
    What a run was asked to do, written at its start; a rerun with other settings is refused.
``lock``
    One run per output folder (a lock that dies with its process).

The command (``gradcam.cli``) and the engines (``gradcam.engines``) import from here; nothing here imports
them.
"""
