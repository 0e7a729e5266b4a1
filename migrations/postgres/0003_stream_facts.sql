-- Download results also report the video stream's start time and declared frame count.
ALTER TABLE videos ADD COLUMN start_time_s DOUBLE PRECISION;
ALTER TABLE videos ADD COLUMN stream_frames BIGINT;
