"""The gVisor runtime: sandboxes made with `runsc`, always through argument lists."""
