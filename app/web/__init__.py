"""The browser client served at `/`: static files and the headers that guard them."""
