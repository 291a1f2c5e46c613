//! Write-ahead journal of engine inputs, snapshots on disk, and recovery.
