//! Network layer: sans-IO connections driven by the io_uring and mio backends.
