"""Jobs: one module per kind of run (each a ``wbc`` command and an MLproject entry point): train, evaluate,
calibrate, shiftbench, average, compare, and main, the whole job as a function."""
