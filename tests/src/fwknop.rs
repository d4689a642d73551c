//! The real fwknop client and server in the lab (placeholder: being written).
