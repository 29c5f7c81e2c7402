"""Online half of streamrec: the Faust worker that serves next-item predictions from Kafka."""
