"""HTTP clients: fetching images through the private-network guard under a deadline, and the teacher."""
