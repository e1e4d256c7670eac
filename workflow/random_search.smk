# Stage 6: random search (see issue 7).
