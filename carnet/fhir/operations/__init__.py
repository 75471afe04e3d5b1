"""What spans resource types: the transaction/batch Bundle processor, Patient/$everything, bulk
export behind a second person, and POST `<type>/_search`. Each is its own module, above the
resource modules, beside the others (none imports another)."""
