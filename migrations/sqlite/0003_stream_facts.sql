-- Download results also report the video stream's start time and declared frame count.
ALTER TABLE videos ADD COLUMN start_time_s REAL;
ALTER TABLE videos ADD COLUMN stream_frames INTEGER;
