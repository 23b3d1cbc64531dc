//! Hugging Face PEFT interoperability: export, import and merge (filled in by the PEFT work).
