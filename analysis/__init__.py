"""Results -> pandas -> speedup tables and plots: reads run/multirun directories written by sim/ and real/."""
