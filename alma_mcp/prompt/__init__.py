"""What an agent is given: the result models of a retrieval and the prompt rendered from them."""
