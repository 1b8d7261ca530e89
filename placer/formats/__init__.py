"""Reading and writing: engine routing dumps, the ESFT traces, placement files and engine exports."""
