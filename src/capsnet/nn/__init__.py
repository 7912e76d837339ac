"""Capsule maths and layers, knowing nothing of data, training or tools: routing
(:mod:`~capsnet.nn.routing`, :mod:`~capsnet.nn.em`, :mod:`~capsnet.nn.em_conv`),
layers (:mod:`~capsnet.nn.layers`), losses (:mod:`~capsnet.nn.losses`), the fast
convolutions (:mod:`~capsnet.nn.dftconv`, :mod:`~capsnet.nn.patchconv`) and the native
kernels (:mod:`~capsnet.nn.native`, C++ sources in ``csrc/``)."""
