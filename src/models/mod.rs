pub mod face_pose;
pub mod facemesh;
