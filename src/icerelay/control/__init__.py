"""Control protocols a SIP proxy uses to drive the media relay: rtpengine's ng, MediaProxy's."""
