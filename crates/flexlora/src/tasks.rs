//! Task metrics as GLUE defines them (filled in by the data work).
