//! fwknop's Single Packet Authorization format (placeholder: being written).
