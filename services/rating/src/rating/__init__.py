"""Rating: accounting records -> sessions -> usage rated into each customer's billing period."""
