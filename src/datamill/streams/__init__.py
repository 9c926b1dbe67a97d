"""Files through Kafka in OpenMSIStream's chunk format: the codec, reassembly, and the send/receive programs.

Nothing here touches datamill's database; the stream dataflow (:mod:`datamill.dataflows.ingest`) builds
on it. ``confluent_kafka`` and ``msgpack`` (the ``[kafka]`` extra) are imported only when used.
"""
