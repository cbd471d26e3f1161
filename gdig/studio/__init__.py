"""What the app needs beside the core, free of Streamlit: background jobs (jobs), explanations of one candidate
(explain) and what the pages show (views). The pages only arrange widgets around these."""
